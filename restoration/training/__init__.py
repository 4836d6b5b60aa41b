"""Training: the SIPL network (`sipl`), the diffusion prior (`prior`), the post-deconvolution step, their crops and
photos (`data`), and weight-space interpolation of two checkpoints (`interpolate`)."""
