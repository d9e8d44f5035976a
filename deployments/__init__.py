"""Ray Serve deployments (FrameEncoder, Planner, Refiner, decoder, HTTP ingress) over `model.engine`."""
