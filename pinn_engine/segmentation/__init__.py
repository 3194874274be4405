"""Myocardium segmentation: synthetic training data, compact U-Net, heart localisation."""
