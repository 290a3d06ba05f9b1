"""Ready-made experiments: the offline quickstart and the recipe comparison."""
