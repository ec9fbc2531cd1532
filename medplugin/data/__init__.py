"""Dataset indexers (raw release -> MONAI datalist), patient-level splits, synthetic demo data."""

from medplugin.data.datalist import index_images, read_datalist
from medplugin.data.dataset import TolerantDataset
from medplugin.data.oct2017 import index_oct2017, oct2017_datalist
from medplugin.data.splits import assert_disjoint_patients, patient_level_split

__all__ = [
    "TolerantDataset",
    "assert_disjoint_patients",
    "index_images",
    "index_oct2017",
    "oct2017_datalist",
    "patient_level_split",
    "read_datalist",
]
