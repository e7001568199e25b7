"""Planning: KV capacity on a GPU layout, the time model and its terms, the GPU catalog and
inventory, published and measured figures, and the plan rendered as text or a chart."""
