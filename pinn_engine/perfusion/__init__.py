"""Myocardial perfusion: two-compartment exchange model (2CXM), digital reference object."""
