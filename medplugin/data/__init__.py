"""Dataset indexers (raw release -> MONAI datalist), patient-level splits, synthetic demo data."""

from medplugin.data.chestxray14 import ChestXray14Indexer, chestxray14_datalist, index_chestxray14
from medplugin.data.datalist import index_images, read_datalist
from medplugin.data.dataset import TolerantDataset
from medplugin.data.fundus import FundusIndexer, fundus_datalist, index_aptos, index_eyepacs, index_fundus
from medplugin.data.indexer import DatasetIndexer, ProblemReport, Scan
from medplugin.data.lungseg import LungSegmentationIndexer, index_lungseg, lungseg_datalist
from medplugin.data.oct2017 import Oct2017Indexer, index_oct2017, oct2017_datalist
from medplugin.data.splits import assert_disjoint_patients, patient_level_split

__all__ = [
    "ChestXray14Indexer",
    "DatasetIndexer",
    "FundusIndexer",
    "LungSegmentationIndexer",
    "Oct2017Indexer",
    "ProblemReport",
    "Scan",
    "TolerantDataset",
    "assert_disjoint_patients",
    "fundus_datalist",
    "index_aptos",
    "index_eyepacs",
    "index_fundus",
    "index_images",
    "index_lungseg",
    "lungseg_datalist",
    "index_oct2017",
    "chestxray14_datalist",
    "index_chestxray14",
    "oct2017_datalist",
    "patient_level_split",
    "read_datalist",
]
