"""medplugin.data.synthetic."""
