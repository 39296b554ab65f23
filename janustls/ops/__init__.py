"""Operations: the service, reload, CRL/OCSP fetching and watching, status, metrics, workers, logs."""
