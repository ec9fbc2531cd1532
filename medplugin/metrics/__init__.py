"""medplugin.metrics."""
