"""Lightning and Fabric callbacks of rcl."""
