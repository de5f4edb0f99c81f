"""store-scp: a DICOM Store SCP that lands images in AWS HealthImaging."""

__version__ = "0.1.0"
