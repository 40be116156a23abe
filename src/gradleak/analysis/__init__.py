"""Model analyses of the SoK paper: IGSA smoothness (Sec. 5.1) and theory checks (Sec. 4)."""
