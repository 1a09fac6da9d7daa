"""The ground floor: what every stage shares (models, images, devices, batching, top-K, split)."""
