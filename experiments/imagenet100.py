"""Write the ImageNet-100 subset of an ImageNet-1k folder as a folder of links (nothing is copied).

ImageNet-100 is the 100-class subset of Tian et al. (CMC, 2019), listed in HobbitLong/CMC ``imagenet100.txt``
(shipped here as ``data_lists/imagenet100.txt``, one WordNet id a line; solo-learn's
``solo/data/dataset_subset/imagenet100_classes.txt`` lists the same classes). The destination gets ``train/`` and
``val/``, each with the 100 class folders, each holding one symbolic link (absolute path) per image of the source's
class folder: every tool that reads class folders reads it as a dataset of its own.

    python -m experiments.imagenet100 /path/to/imagenet /path/to/imagenet100

The source is an ImageNet-1k root holding ``train/`` and ``val/`` with one folder per class (the validation
images sorted into class folders, as for every evaluation here). The destination must not exist yet; it is
written under a temporary name and renamed when complete, so an interrupted run leaves no half-made subset.
"""
import os
import shutil
import sys
import tempfile

from src.data.folders import IMG_EXTENSIONS, require_folder
from src.run.args import ArgumentParser
from src.run.errors import UserError
from src.run.launch import exit_on_user_error

DEFAULT_LIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data_lists",
                            "imagenet100.txt")
SPLITS = ("train", "val")


def get_args_parser(add_help=False):
    parser = ArgumentParser("Write the ImageNet-100 subset as a folder of links", add_help=add_help)
    parser.add_argument("source", metavar="IMAGENET", help="ImageNet-1k root holding train/ and val/ class folders")
    parser.add_argument("dest", metavar="DEST", help="folder to create with train/ and val/ (must not exist)")
    parser.add_argument("--classes", default=DEFAULT_LIST, metavar="FILE",
                        help="class list, one WordNet id (folder name) a line (default: data_lists/imagenet100.txt, "
                             "CMC's ImageNet-100)")
    return parser


def read_classes(path):
    """The class folder names of a list file (blank lines skipped).

    Raises:
        UserError: unreadable file, no names, or a name given twice.
    """
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the class list '{path}' ({getattr(exc, 'strerror', None) or exc}): pass "
                        "--classes FILE with one class folder name a line") from None
    twice = sorted({n for n in names if names.count(n) > 1})
    paths = [n for n in names if "/" in n or os.sep in n or n in (".", "..")]
    for problem, bad in (("no class folder names", not names), (f"{', '.join(twice[:5])} twice", twice),
                         (f"paths instead of folder names ({', '.join(paths[:5])})", paths)):
        if bad:
            raise UserError(f"the class list '{path}' has {problem}: give one class folder name a line")
    return names


def plan(source, classes):
    """``{split: {class: [image paths]}}`` of the source, checked.

    Raises:
        UserError: a missing split folder, classes missing from a split (named), or a class folder without images.
    """
    out = {}
    for split in SPLITS:
        folder = os.path.join(source, split)
        require_folder(folder, what="ImageNet split folder", hint="pass the ImageNet-1k root holding train/ and "
                       "val/, one folder per class")
        missing = [c for c in classes if not os.path.isdir(os.path.join(folder, c))]
        if missing:
            raise UserError(f"{len(missing)} of the {len(classes)} classes are not in '{folder}': "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (pass the ImageNet-1k "
                            "root whose train/ and val/ hold one folder per WordNet id; the val images sorted into "
                            "class folders)")
        out[split] = {}
        for c in classes:
            images = []
            for dirpath, _, names in sorted(os.walk(os.path.join(folder, c), followlinks=True)):
                images += [os.path.join(dirpath, n) for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
            if not images:
                raise UserError(f"class folder '{os.path.join(folder, c)}' holds no images (extensions: "
                                f"{' '.join(IMG_EXTENSIONS)}): re-extract that class")
            out[split][c] = images
    return out


def write_links(layout, source, dest):
    """Create ``dest/<split>/<class>/`` with one link per image (the source's relative paths kept), written under a
    temporary name next to ``dest`` and renamed at the end. Returns: ``{split: number of links}``."""
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(os.path.abspath(dest)) + "-", dir=parent)
    try:
        counts = {}
        for split, per_class in layout.items():
            counts[split] = 0
            for c, images in per_class.items():
                class_dir = os.path.join(source, split, c)
                for path in images:
                    link = os.path.join(tmp, split, c, os.path.relpath(path, class_dir))
                    os.makedirs(os.path.dirname(link), exist_ok=True)
                    os.symlink(os.path.abspath(path), link)
                counts[split] += len(images)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


@exit_on_user_error
def main(args):
    if os.path.lexists(args.dest):
        raise UserError(f"destination '{args.dest}' already exists: give a new folder (the subset is written there "
                        "as links), or remove it first")
    classes = read_classes(args.classes)
    require_folder(args.source, what="ImageNet folder", hint="pass the ImageNet-1k root holding train/ and val/")
    layout = plan(args.source, classes)
    try:
        counts = write_links(layout, args.source, args.dest)
    except OSError as exc:
        raise UserError(f"cannot write the links under '{args.dest}' ({exc.strerror or exc}): choose a writable "
                        "folder on a file system with symbolic links") from None
    print(f"=> {args.dest}: {len(classes)} classes, " + ", ".join(f"{counts[s]} {s} images" for s in SPLITS)
          + f" (links into {os.path.abspath(args.source)})", flush=True)
    return counts


if __name__ == "__main__":
    main(ArgumentParser("Write the ImageNet-100 subset as a folder of links", parents=[get_args_parser()])
         .parse_args(sys.argv[1:]))
