"""One router per resource: spills, histograms, alarms, health, metrics."""
