"""medplugin.handlers."""
