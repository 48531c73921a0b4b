"""What every part of aifmon shares: metric schema, site inventory, store, collector, configuration."""
