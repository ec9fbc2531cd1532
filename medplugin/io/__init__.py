"""medplugin.io."""
