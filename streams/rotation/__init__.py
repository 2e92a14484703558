"""Currency strength from FX pairs and sector rotation from sector ETFs: pure kernels and their processors."""
