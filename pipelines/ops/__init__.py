"""Operations: ingestion from the inbox, alerts, retraining cadence and population migration reports."""
