"""From an image to labels: preprocessing, the sliding window, the predictor, confidence."""
