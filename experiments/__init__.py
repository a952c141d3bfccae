"""Studies, custom callbacks and benchmarks built on rcl."""
