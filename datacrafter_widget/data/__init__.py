"""Data layer: images, labelled datasets and the project store on disk."""
