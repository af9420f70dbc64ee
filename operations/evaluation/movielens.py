"""Reading a folder in the MovieLens 100K layout (GroupLens): `u.data`, `u.item`, optional `u.user` and `u.genre`.

Only reads; nothing is copied anywhere. Ratings stay in file order, which the splitter depends on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ENCODING = "latin-1"
GENRE_FLAGS = 19
# u.genre of MovieLens 100K, used when the folder has none.
DEFAULT_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


class MovieLensError(Exception):
    """The folder is not in the MovieLens 100K layout."""


@dataclass(frozen=True)
class Movie:
    movie_id: int
    title: str
    release_date: datetime | None
    genres: tuple[str, ...]


@dataclass(frozen=True)
class MovieLensData:
    # One row per rating, in file order: user id, movie id, rating (1-5), Unix seconds.
    ratings: np.ndarray
    movies: dict[int, Movie]
    # user id -> traits (age, gender, occupation, zip), empty without u.user.
    users: dict[int, dict[str, object]] = field(default_factory=dict)

    @property
    def user_ids(self) -> np.ndarray:
        return self.ratings[:, 0]

    @property
    def movie_ids(self) -> np.ndarray:
        return self.ratings[:, 1]


def _genre_names(folder: Path) -> tuple[str, ...]:
    path = folder / "u.genre"
    if not path.exists():
        return DEFAULT_GENRES
    names: dict[int, str] = {}
    for line in path.read_text(encoding=ENCODING).splitlines():
        if line.strip():
            name, _, index = line.rpartition("|")
            names[int(index)] = name
    if sorted(names) != list(range(GENRE_FLAGS)):
        raise MovieLensError(f"{path} must name the {GENRE_FLAGS} genres 0..{GENRE_FLAGS - 1}")
    return tuple(names[index] for index in range(GENRE_FLAGS))


def _release_date(text: str) -> datetime | None:
    return datetime.strptime(text, "%d-%b-%Y").replace(tzinfo=UTC) if text else None


def _movies(folder: Path) -> dict[int, Movie]:
    genre_names = _genre_names(folder)
    movies: dict[int, Movie] = {}
    for number, line in enumerate((folder / "u.item").read_text(encoding=ENCODING).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 5 + GENRE_FLAGS:
            raise MovieLensError(f"u.item line {number}: expected {5 + GENRE_FLAGS} fields, found {len(fields)}")
        flags = fields[5:]
        movie_id = int(fields[0])
        movies[movie_id] = Movie(
            movie_id=movie_id,
            title=fields[1],
            release_date=_release_date(fields[2]),
            genres=tuple(name for name, flag in zip(genre_names, flags, strict=True) if flag == "1"),
        )
    return movies


def _users(folder: Path) -> dict[int, dict[str, object]]:
    path = folder / "u.user"
    if not path.exists():
        return {}
    users: dict[int, dict[str, object]] = {}
    for line in path.read_text(encoding=ENCODING).splitlines():
        if line.strip():
            user_id, age, gender, occupation, zip_code = line.split("|")
            users[int(user_id)] = {"age": int(age), "gender": gender, "occupation": occupation, "zip": zip_code}
    return users


def movielens_load(*, folder: Path) -> MovieLensData:
    for name in ("u.data", "u.item"):
        if not (folder / name).is_file():
            raise MovieLensError(f"{folder} has no {name}: not a MovieLens 100K folder")
    ratings = np.loadtxt(folder / "u.data", dtype=np.int64, ndmin=2)
    if ratings.shape[1] != 4 or not len(ratings):
        raise MovieLensError("u.data must have rows of user, item, rating, timestamp")
    movies = _movies(folder)
    unknown = set(np.unique(ratings[:, 1]).tolist()) - set(movies)
    if unknown:
        raise MovieLensError(f"u.data rates {len(unknown)} movies missing from u.item, e.g. {min(unknown)}")
    return MovieLensData(ratings=ratings, movies=movies, users=_users(folder))
