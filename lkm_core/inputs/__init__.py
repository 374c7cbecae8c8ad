"""Reading the user's images: files, folders and DICOM series."""
