"""COVID-19 chest CT classification: shared core (contracts, preprocessing, data)."""
