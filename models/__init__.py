"""arseg_ops.models: AR-Seg networks built on arseg_ops (filled by the models issue)."""
