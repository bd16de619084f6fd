"""The text whose logits conversion checks compare (light: the recipe's default imports it)."""

SAMPLE_TEXT = (
    "The capital of France is Paris. Llamas are domesticated South American camelids, widely used "
    "as meat and pack animals by Andean cultures since the pre-Columbian era. Knowledge distillation "
    "trains a small student model to match the output distribution of a larger teacher."
)
