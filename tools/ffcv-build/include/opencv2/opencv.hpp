// ffcv 1.0.2 includes <opencv2/opencv.hpp>, whose stock version pulls in every OpenCV module.
// libffcv only needs resize (imgproc) and Mat (core); this shadow header, placed first on the
// include path at install time, includes just those two.
#pragma once
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
