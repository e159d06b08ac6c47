"""Named policies that gate audits: thresholds and no-regression rules."""
