"""What a case leaves on disk: label files, DICOM SEG, pictures, and reading results back."""
