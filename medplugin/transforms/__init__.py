"""medplugin.transforms."""
