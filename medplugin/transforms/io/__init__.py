"""medplugin.transforms.io."""
