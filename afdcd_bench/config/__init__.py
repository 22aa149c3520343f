"""Recipes: loading, inheritance, dotted overrides and validation (unknown key = error)."""
from .loader import config_hash, find_recipe, is_teacher_recipe, list_recipes, load_recipe, project_root, recipes_root, run_method
from .runs import budget_slug, run_dir, settings, settings_diff, teacher_checkpoint
from .schema import ConfigError, RecipeConfig, to_dict

__all__ = ["ConfigError", "RecipeConfig", "config_hash", "find_recipe", "is_teacher_recipe", "list_recipes", "load_recipe",
           "budget_slug", "project_root", "recipes_root", "run_dir", "run_method", "settings", "settings_diff", "teacher_checkpoint", "to_dict"]
