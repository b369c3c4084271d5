"""Training one configuration or a fused group: the loop, the recipe, evaluation, workspaces, method stages."""
