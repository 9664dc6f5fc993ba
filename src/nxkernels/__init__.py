"""nxkernels: fused ops, each with a pure-PyTorch reference. Importing this never imports triton or
xformers and never initialises CUDA; backends load lazily when an op first dispatches to them."""
