"""medplugin.transforms.fundus."""
