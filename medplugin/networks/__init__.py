"""medplugin.networks."""
