"""Operations: integrity checks of a record and the load test."""
