"""medplugin.visualize."""
