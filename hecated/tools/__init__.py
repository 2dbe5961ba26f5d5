"""Programs for people: hecatectl, its doctor, and install-units."""
