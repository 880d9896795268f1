"""``python -m vq3dlib.backend``: the backend report (:func:`vq3dlib.backend.report.main`)."""

from vq3dlib.backend.report import main

if __name__ == "__main__":
    raise SystemExit(main())
