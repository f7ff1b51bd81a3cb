"""nerfserve core: the science as a plain library (no FastAPI, Celery or database imports).

Conventions (see docs/conventions.md): camera space is [Right, Down, Forward] (OpenCV/COLMAP);
poses are 4x4 camera-to-world (`c2w`); depth is z-depth along the camera's forward axis.
"""
