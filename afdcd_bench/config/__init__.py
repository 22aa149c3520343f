"""Recipes: loading, inheritance, dotted overrides and validation (unknown key = error)."""
from .loader import config_hash, find_recipe, list_recipes, load_recipe, recipes_root
from .schema import ConfigError, RecipeConfig, to_dict

__all__ = ["ConfigError", "RecipeConfig", "config_hash", "find_recipe", "list_recipes", "load_recipe", "recipes_root", "to_dict"]
