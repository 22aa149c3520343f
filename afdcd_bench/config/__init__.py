"""Recipes: loading, inheritance, dotted overrides and validation (unknown key = error)."""
from .loader import config_hash, find_recipe, is_teacher_recipe, list_recipes, load_recipe, recipes_root, run_method
from .schema import ConfigError, RecipeConfig, to_dict

__all__ = ["ConfigError", "RecipeConfig", "config_hash", "find_recipe", "is_teacher_recipe", "list_recipes", "load_recipe", "recipes_root", "run_method", "to_dict"]
