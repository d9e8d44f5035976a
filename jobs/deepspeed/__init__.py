"""DeepSpeed JSON configs for `videorobin train` ("auto" fields are filled from the run's flags)."""
