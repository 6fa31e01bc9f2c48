"""ImageNet data: preparation from the release files, readers, decoding, transforms and loaders."""
