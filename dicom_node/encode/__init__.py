"""DICOM encoding of the engine's results (highdicom): Parametric Maps, SEG, SR, display copies."""
