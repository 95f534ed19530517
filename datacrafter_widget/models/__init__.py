"""Model backends: diffusion generator, CLIP embedder, captioners, and the Models bundle that holds them."""
