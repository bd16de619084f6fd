"""Pipeline stages. Each takes the recipe and its output folder and returns a summary dict."""
