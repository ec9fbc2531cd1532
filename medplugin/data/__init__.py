"""medplugin.data."""
