"""Fine-tune GPT-2 on PubMedQA: one module per DVC stage plus the small core they share."""
