"""What commands compute from records: labelled data, evaluation metrics, the linear probe."""
